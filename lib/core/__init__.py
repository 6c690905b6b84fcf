"""HigherHRNet's core: the loss (:mod:`.loss`), grouping (:mod:`.group`), test-time inference
(:mod:`.inference` with :mod:`.udp`, :mod:`.layout`, :mod:`.protocol` and :mod:`.predictor`), training
(:mod:`.trainer`, :mod:`.train_loop`, :mod:`.checkpointing`, :mod:`.time_budget`), evaluation and
validation, and the debug pictures."""
