"""Ground floor: files that survive interruption and one writer at a time.

`atomic` (temporary file, fsync, rename), `locks` (advisory locks naming the holder's PID),
`files` (.npy headers checked before mapping, JSON objects, disk room), `feature_files` (per-item
feature arrays with their JSON sidecar) and `row_files` (resumable filling of per-item rows). Nothing
here knows a dataset, a model or a run.
"""
