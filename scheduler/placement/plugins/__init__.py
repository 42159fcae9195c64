"""Placement plugins, one module each: a ``NAME``, a pure function tests call directly, the plugin class
wrapping it and a ``new(args)`` factory. ``scheduler.placement.registry`` lists them."""
