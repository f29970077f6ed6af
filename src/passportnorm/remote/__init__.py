"""Black-box verification of a model behind an HTTP API: protocols, transport, evidence log, the job."""

from .protocols import PROTOCOLS, Protocol, TemplateProtocol, V2Protocol, load_protocol
from .transport import Endpoint, RemoteError, TransportOptions
from .verify_remote import RemoteOptions, verify_remote

__all__ = [
    "PROTOCOLS",
    "Endpoint",
    "Protocol",
    "RemoteError",
    "RemoteOptions",
    "TemplateProtocol",
    "TransportOptions",
    "V2Protocol",
    "load_protocol",
    "verify_remote",
]
