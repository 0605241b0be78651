"""The built-in transfer methods' names, in report order, without importing torch: the
report, the plots and the profiles read records by them. The registry
(:mod:`pacsim.transfer.registry`) is where methods are declared; it checks on import that
its default methods are ``METHODS`` and those that keep the source are ``PAC_METHODS``."""

BASELINES = ("scratch", "finetune", "head", "l2sp", "bitfit")
PAC_METHODS = ("pac-paper", "pac")
METHODS = BASELINES + PAC_METHODS
