"""Full-ranking evaluation: `metrics` (Recall, NDCG, MRR, HR at K from ranks), `evaluator` (the
catalogue encoded once, users scored in chunks with their history masked) and `ranking` (top-k of
given users, for recommending)."""
