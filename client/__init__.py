"""Python client and the `reid` command line for the apnet-reid HTTP API (never imports server/).

from client import ReIDClient
with ReIDClient("http://127.0.0.1:8000", api_key="...") as reid:
    result = reid.search("crop.jpg", top_k=5)
    print(result.verdict, result.identities[0].person_id)
"""

from client.api import AsyncReIDClient, ReIDClient
from client.errors import (
    BadGateway,
    BadRequest,
    ConnectionFailed,
    Forbidden,
    GatewayTimeout,
    NotFound,
    PayloadTooLarge,
    ReIDError,
    ServerError,
    Unauthorized,
    Unavailable,
    Unprocessable,
    UnsupportedMediaType,
)
from client.models import (
    AddedItem,
    AddResult,
    Embedding,
    GalleryItem,
    GalleryStats,
    Hit,
    Identity,
    Readiness,
    SearchResult,
    Timings,
)

__all__ = [
    "AddResult",
    "AddedItem",
    "AsyncReIDClient",
    "BadGateway",
    "BadRequest",
    "ConnectionFailed",
    "Embedding",
    "Forbidden",
    "GalleryItem",
    "GalleryStats",
    "GatewayTimeout",
    "Hit",
    "Identity",
    "NotFound",
    "PayloadTooLarge",
    "Readiness",
    "ReIDClient",
    "ReIDError",
    "SearchResult",
    "ServerError",
    "Timings",
    "Unauthorized",
    "Unavailable",
    "UnsupportedMediaType",
    "Unprocessable",
]
