"""The WSGI entry point gunicorn loads in each worker (see gunicorn.conf.py)."""
import sys

from bundle.format import BundleError
from .config import ConfigError
from .logs import configure, log_format
from .process_settings import LOG_LEVEL
from .providers import ProviderError

try:
    configure(LOG_LEVEL.value(), log_format())
    from .app import create_app

    application = create_app()
except (BundleError, ConfigError, ProviderError, ValueError) as exc:
    print(f"error: {exc}", file=sys.stderr, flush=True)
    sys.exit(3)  # gunicorn's "worker failed to boot": the master stops instead of respawning
