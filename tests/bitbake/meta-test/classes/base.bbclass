# base.bbclass of the test bed: the task skeleton every recipe gets, as in OE-core, minus
# fetching, patching and packaging (an image recipe of the bed needs none of them).

BB_DEFAULT_TASK ?= "build"

# do_build is the target of every `bitbake <recipe>`; it runs nothing itself.
do_build[noexec] = "1"
do_build[nostamp] = "1"
do_build () {
	:
}
addtask build

python base_eventhandler() {
    # Proves event handlers are registered with the datastore (data=d) in the bed.
    if isinstance(e, bb.event.ConfigParsed):
        e.data.setVar("BB_BED_CONFIG_PARSED", "1")
}
addhandler base_eventhandler
base_eventhandler[eventmask] = "bb.event.ConfigParsed"
