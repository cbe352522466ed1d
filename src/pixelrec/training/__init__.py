"""The training loop: `trainer` (epochs, steps, validation, early stopping, exact resume, DDP),
`transfer` (a new run started from another run's weights) and `report` (train.log, the console,
TensorBoard, metrics.csv)."""
