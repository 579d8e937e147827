"""relayfl's Flower app: the forwarding ServerApp and the ClientApp named in the run config.

Components of ``pyproject.toml`` beside this file: ``relayfl_app:server`` reads its
:class:`relayfl.RunConfig` from ``context.run_config`` and saves ``results.json`` into the
``out`` folder; ``relayfl_app:client`` runs the ClientApp named by ``clients``
(``"clients.digits:app"`` by default), e.g. one of relayfl's ready clients or your own
:class:`relayfl.flower.RelayClientApp`.
"""

from __future__ import annotations

import importlib

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from relayfl.errors import ConfigError
from relayfl.flower import RelayClientApp, relay_server_app

server = relay_server_app()


class _NamedClientApp(ClientApp):
    """Runs the client that ``context.run_config["clients"]`` names: a RelayClientApp as
    it is; any other Flower ClientApp or a ``client_fn`` inside a RelayClientApp."""

    def __call__(self, message: Message, context: Context) -> Message:
        target = str(context.run_config.get("clients", "clients.digits:app"))
        module, _, attr = target.partition(":")
        try:
            obj = getattr(importlib.import_module(module), attr or "app")
        except (ImportError, AttributeError) as err:
            raise ConfigError(
                f"cannot load the client {target!r} ({err}); set clients to "
                "'module:attribute' of a ClientApp or client_fn importable on every SuperNode"
            ) from None
        if isinstance(obj, RelayClientApp):
            app = obj
        elif isinstance(obj, ClientApp):
            app = RelayClientApp(app=obj)
        elif callable(obj):
            app = RelayClientApp(client_fn=obj)
        else:
            raise ConfigError(
                f"clients {target!r} is a {type(obj).__name__}; name a ClientApp or a client_fn"
            )
        return app(message, context)


client = _NamedClientApp()
