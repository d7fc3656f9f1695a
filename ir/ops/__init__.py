"""Built-in op declarations. Importing this package registers them all."""
from . import (core, elementwise, shape, reduce, linalg, nn, conv, pool, random,  # noqa: F401
               gather)
