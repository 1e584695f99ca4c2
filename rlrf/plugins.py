"""Importing this module loads every third-party ``rlrf.envs`` plugin.

It exists for Gymnasium's ``"module:id"`` syntax: ``gymnasium.make("rlrf.plugins:acme/Foo-v0")``
works without importing ``rlrf`` or the plugin package first.
"""

from rlrf.registration import load_plugins

load_plugins()
