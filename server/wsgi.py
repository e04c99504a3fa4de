"""The WSGI entry point gunicorn loads in each worker (see gunicorn.conf.py)."""
import sys

from .bundle import BundleError
from .config import ConfigError
from .providers import ProviderError

try:
    from .app import create_app

    application = create_app()
except (BundleError, ConfigError, ProviderError) as exc:
    print(f"error: {exc}", file=sys.stderr, flush=True)
    sys.exit(3)  # gunicorn's "worker failed to boot": the master stops instead of respawning
