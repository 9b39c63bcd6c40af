"""
What policies and delivery observers have in common as plugins: how they are found in
``twisted/plugins`` (L{gateway.plugins.discovery}), how their options are read
(L{gateway.plugins.options}), the error that names a bad option (L{gateway.plugins.errors}) and
the one lazy plugin object the built-ins ship (L{gateway.plugins.factory}).

It sits below both ``gateway.policy`` and ``gateway.delivery`` and imports neither: each of
them passes its own factory interface in.  Plugin authors import from L{gateway.plugin}.
"""
