"""Use cases, one module each, called by both the Python API and the command line, so that each verb
has one implementation: `train`, `evaluate`, `recommend`, `extract` (and `extract_text`), `new_items`
(embed items that arrived after training), `export`, `verify` (and `contact_sheet`, the picture
`recommend --image` draws)."""
