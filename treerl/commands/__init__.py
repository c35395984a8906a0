"""The commands of the `treerl` CLI, one module each, thin entry points above the library: each
reads its arguments and config, calls the library and prints; `treerl.cli` parses and dispatches."""

# every registry, so that loading a config checks each name it gives (treerl.registry.check_names)
from treerl import algo, tasks  # noqa: E402, F401
from treerl.curriculum import scores  # noqa: E402, F401  (reschedule.rank_by)
from treerl.loop import state  # noqa: E402, F401  (train.lr_schedule)
