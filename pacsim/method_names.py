"""The transfer methods' names, in report order, without importing torch (the report and
the plots use them; :data:`pacsim.transfer.METHODS` is this tuple)."""

BASELINES = ("scratch", "finetune", "head", "l2sp", "bitfit")
PAC_METHODS = ("pac-paper", "pac")
METHODS = BASELINES + PAC_METHODS
