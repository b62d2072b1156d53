"""Point-in-time behavioural features: :mod:`features.build` streams the log through the families of
:mod:`features.families`, :mod:`features.registry` names them."""
