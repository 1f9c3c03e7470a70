"""Searches that are not passes: DiTFastAttn's greedy plan search (``ditfastattn``) and
MoA's influence profile (``moa_profile``) and rule MILP (``moa_milp``). They run models
(through the runtime or torch) and write plans that passes and the runtime read."""
