"""S3 operators, one module per action, built on the amazon provider's S3Hook.

* :mod:`.lifecycle` — :class:`S3ApplyLifecycleOperator`;
* :mod:`.copy_then_delete` — :class:`S3GlacierCopyThenDeleteOperator`;
* :mod:`.expire` — :class:`S3ExpireObjectsOperator`;
* :mod:`.common` — S3's own limits and the DeleteObjects batching they share.
"""

from __future__ import annotations

from data_lifecycle.operators.s3.copy_then_delete import S3GlacierCopyThenDeleteOperator
from data_lifecycle.operators.s3.expire import S3ExpireObjectsOperator
from data_lifecycle.operators.s3.lifecycle import S3ApplyLifecycleOperator

__all__ = ["S3ApplyLifecycleOperator", "S3ExpireObjectsOperator", "S3GlacierCopyThenDeleteOperator"]
