"""The `/metrics` endpoint as the config says: started on the sockets systemd passed
(t3backupd.socket), else on `metrics.listen`; a reload's `[metrics]` applied without a
moment in which nothing listens. `http.Endpoint` serves; this module only configures it.
"""

from __future__ import annotations

import os
from pathlib import Path

from t3backupd.core.config import MetricsConfig
from t3backupd.core.errors import ConfigError
from t3backupd.root.http import Endpoint, EndpointError, check_tls, inherited_sockets
from t3backupd.root.log import get_logger

# sd_listen_fds(unset_environment=1): no child inherits systemd's socket variables.
LISTEN_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def start_endpoint(endpoint: Endpoint, settings: MetricsConfig, config_path: Path) -> None:
    """Serve on systemd's sockets, else on `metrics.listen`. Raises ConfigError for
    unusable TLS files or passed fds (a port that cannot be bound is retried instead)."""
    try:
        inherited = inherited_sockets(os.environ, os.getpid())
        endpoint.start(inherited, settings.listen, settings.tls_cert, settings.tls_key)
    except EndpointError as error:
        raise ConfigError(str(config_path), [str(error)]) from None
    finally:
        for name in LISTEN_VARIABLES:
            os.environ.pop(name, None)
    if endpoint.activated:
        get_logger().info(
            "metrics socket from systemd; metrics.listen not used for binding",
            addresses=endpoint.addresses,
            listen=settings.listen or None,
        )


def reload_endpoint(
    endpoint: Endpoint, old: MetricsConfig, new: MetricsConfig, config_path: Path
) -> None:
    """Apply a reload's `[metrics]` without ever closing the listening socket first: a
    new address is bound before the old one is closed; certificates are reloaded into
    the live TLS context. Raises ConfigError (endpoint unchanged) if the new address
    cannot be bound or the new TLS files cannot be loaded."""
    if endpoint.activated and old.listen != new.listen:
        get_logger().warning(
            "metrics.listen changed, but the socket comes from systemd: change "
            "ListenStream= in t3backupd.socket to serve another address",
            listen=new.listen,
            serving=endpoint.addresses,
        )
    try:
        if new.tls_cert:
            check_tls(new.tls_cert, new.tls_key)
        endpoint.change_listen(new.listen)
        endpoint.set_tls(new.tls_cert, new.tls_key)
    except (EndpointError, OSError, ValueError) as error:
        text = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise ConfigError(
            str(config_path), [f"metrics.listen: cannot serve on {new.listen!r}: {text}"]
        ) from None
