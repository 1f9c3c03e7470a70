"""Pass infrastructure: the contract, spec parser, registry, pass manager, invariants,
facts and the compile context. No pass lives here."""
