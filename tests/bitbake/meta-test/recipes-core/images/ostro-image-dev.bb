require ostro-image.bb

SUMMARY = "The development variant of the bed's Ostro image: a second image of the same MACHINE"
IMAGE_MOTD ??= "Welcome to Ostro (development image)"
