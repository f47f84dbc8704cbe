"""Hydra's plugin for klexp's config groups, shipped as ``hydra_plugins.klexp_search_path``.

Hydra finds plugins in the ``hydra_plugins`` namespace package; this one appends klexp's configs
(``pkg://klexp.conf``) to every Hydra app's search path, after the app's own, so a user's app can
compose klexp's groups — ``kl/``, ``schedule/``, ``shaping/``, ``trainer/``, ... — by name:
``defaults: [{kl: prior}, {schedule@kl.prior.schedule: linear}]``. The app's own files take
precedence over klexp's of the same name. Without the plugin (klexp not installed as a
distribution), ``hydra.searchpath=[pkg://klexp.conf]`` does the same.
"""

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class KlexpSearchPathPlugin(SearchPathPlugin):
    """Appends ``pkg://klexp.conf`` to the search path."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append(provider="klexp", path="pkg://klexp.conf")
