"""The built-in transfer methods' names, in report order, without importing torch: the
report, the plots and the profiles read records by them. The registry
(:mod:`pacsim.transfer.registry`) is where methods are declared; it checks on import that
its default methods are ``METHODS`` and those that keep the source are ``PAC_METHODS``."""

BASELINES = ("scratch", "finetune", "head", "l2sp", "bitfit")
PAC_METHODS = ("pac-paper", "pac")
METHODS = BASELINES + PAC_METHODS
#: Methods the benchmark derives from the cells it ran, without training of their own.
DERIVED = ("auto", "auto-keep-source")


def is_baseline(method: str) -> bool:
    """Whether records of ``method`` count as a baseline: every trained method that does
    not keep the source exactly, registered extras (e.g. ``lora``) included."""
    return method not in PAC_METHODS and method not in DERIVED
