"""The enrollment authority: the trust root that the aggregation server does not hold.

It keeps its ML-DSA-65 key in its own directory (``authority.key``, 0600) and its own database,
signs enrollment tokens and device certificates, and runs as its own process
(``qflare authority serve``) or offline. The server only relays enrollments to it.
"""

from qflare.authority.keys import (
    AUTHORITY_KEY_FILE,
    AUTHORITY_PUB_FILE,
    AuthorityKeys,
    init_authority,
    load_authority,
)
from qflare.authority.service import AuthorityService, CertificateRecord, TokenRecord
from qflare.authority.settings import AuthoritySettings

__all__ = [
    "AUTHORITY_KEY_FILE",
    "AUTHORITY_PUB_FILE",
    "AuthorityKeys",
    "AuthorityService",
    "AuthoritySettings",
    "CertificateRecord",
    "TokenRecord",
    "init_authority",
    "load_authority",
]
