"""The WSGI entry point gunicorn loads in each worker (see gunicorn.conf.py)."""
import logging
import os
import sys

from .bundle import BundleError
from .config import ConfigError
from .providers import ProviderError

logging.basicConfig(level=os.environ.get("LOG_LEVEL", "info").upper(), stream=sys.stderr,
                    format="[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s")

try:
    from .app import create_app

    application = create_app()
except (BundleError, ConfigError, ProviderError) as exc:
    print(f"error: {exc}", file=sys.stderr, flush=True)
    sys.exit(3)  # gunicorn's "worker failed to boot": the master stops instead of respawning
