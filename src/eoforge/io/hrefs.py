"""Which hrefs eoforge may read: local files under allowed roots, public hosts, allow-listed hosts.

A STAC catalog is input from someone else. Its asset hrefs decide what eoforge opens, so a
hostile or broken catalog could point at ``file:///etc/passwd``, climb out of the catalog with
``../``, or reach the cloud metadata service (``http://169.254.169.254/``) and other private
addresses, directly or through a redirect. :func:`check_href` refuses all of those unless an
:class:`HrefPolicy` allows them; :func:`check_redirects` follows an http(s) href's redirects by
hand (never blindly) and refuses a hop to a host the policy does not allow.
"""

from __future__ import annotations

import fnmatch
import functools
import ipaddress
import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

from eoforge.errors import InputError, TransientError
from eoforge.io.redact import redact_url

__all__ = [
    "ENV_ALLOWED_HOSTS",
    "ENV_ALLOWED_ROOTS",
    "ENV_REDIRECT_HOSTS",
    "HrefPolicy",
    "check_href",
    "check_hrefs",
    "check_redirects",
    "href_host",
]

#: Extra local folders ``file://`` hrefs may point into (``os.pathsep``-separated).
ENV_ALLOWED_ROOTS = "EOFORGE_ALLOWED_ROOTS"
#: Hosts (``name`` or ``name:port``, fnmatch patterns) allowed even on private addresses.
ENV_ALLOWED_HOSTS = "EOFORGE_ALLOWED_HOSTS"
#: Hosts a redirect may lead to besides the original one (fnmatch patterns, comma-separated).
ENV_REDIRECT_HOSTS = "EOFORGE_ALLOWED_REDIRECT_HOSTS"

_SCHEMES = frozenset({"file", "http", "https", "s3"})
_FIX = (
    "fix the catalog's asset hrefs, or allow the location explicitly "
    f"({ENV_ALLOWED_ROOTS} for folders, {ENV_ALLOWED_HOSTS} for hosts)."
)


def _split_env(name: str, sep: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in os.environ.get(name, "").split(sep) if p.strip())


@dataclass(frozen=True)
class HrefPolicy:
    """What hrefs may point at.

    The default allows public http(s) hosts and ``s3://`` and nothing local; a catalog served
    from a folder adds that folder to ``roots``.
    """

    roots: tuple[Path, ...] = ()
    """Folders ``file://`` hrefs and bare paths may point into (symlinks resolved)."""
    hosts: tuple[str, ...] = ()
    """Hosts allowed whatever their address (``name`` or ``name:port``; fnmatch patterns)."""
    redirect_hosts: tuple[str, ...] = ()
    """Hosts a redirect may lead to besides the original host (fnmatch patterns)."""
    schemes: frozenset[str] = field(default=_SCHEMES)
    """URL schemes allowed at all."""
    allow_private: bool = False
    """Allow private, loopback, link-local and reserved addresses on any host (tests only)."""
    resolve: bool = True
    """Resolve host names and check every address they resolve to."""
    max_redirects: int = 3
    """Redirect hops :func:`check_redirects` follows before giving up."""

    @classmethod
    def from_env(
        cls, roots: Iterable[Path | str] = (), hosts: Iterable[str] = (), **kwargs: Any
    ) -> HrefPolicy:
        """A policy with ``roots`` and ``hosts`` plus those named by the environment.

        ``EOFORGE_ALLOWED_ROOTS`` (folders, ``os.pathsep``-separated),
        ``EOFORGE_ALLOWED_HOSTS`` and ``EOFORGE_ALLOWED_REDIRECT_HOSTS`` (comma-separated).
        """
        all_roots = [*roots, *_split_env(ENV_ALLOWED_ROOTS, os.pathsep)]
        return cls(
            roots=tuple(Path(r).expanduser().resolve() for r in all_roots),
            hosts=(*hosts, *_split_env(ENV_ALLOWED_HOSTS, ",")),
            redirect_hosts=_split_env(ENV_REDIRECT_HOSTS, ","),
            **kwargs,
        )

    def with_hosts(self, *hosts: str) -> HrefPolicy:
        """This policy with more allowed hosts."""
        return replace(self, hosts=(*self.hosts, *hosts))

    def host_allowed(self, host: str, port: int | None) -> bool:
        """Whether ``host`` (optionally on ``port``) is allow-listed."""
        names = {host.lower(), f"{host.lower()}:{port}" if port else host.lower()}
        return any(fnmatch.fnmatchcase(n, p.lower()) for p in self.hosts for n in names)


def href_host(href: str) -> str | None:
    """The host name of an http(s) href (lower case), or None."""
    parts = urlsplit(href)
    return parts.hostname if parts.scheme in {"http", "https"} else None


def _legacy_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """IPv4 written the way ``inet_aton`` reads it: ``2852039166``, ``0xa9fea9fe``, ``0251.0.0.1``."""
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


def _literal_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return _legacy_ipv4(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _non_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address (e.g. a cloud metadata service)"
    if ip.is_private:
        return "a private address"
    if ip.is_multicast or ip.is_reserved or ip.is_unspecified:
        return "a reserved address"
    return None


@functools.lru_cache(maxsize=512)  # one lookup per host, not per asset
def _resolve(
    host: str, port: int | None
) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]:
    try:
        infos = socket.getaddrinfo(host, port or 80, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return ()  # unresolvable: nothing can be reached there either
    out = []
    for info in infos:
        ip = _literal_ip(str(info[4][0]))
        if ip is not None:
            out.append(ip)
    return tuple(out)


def _has_traversal(path: str) -> bool:
    decoded = unquote(unquote(path)).replace("\\", "/")
    return ".." in decoded.split("/")


def _refuse(href: str, what: str, why: str) -> InputError:
    return InputError(f"{what} '{redact_url(href)}' is refused: {why}; {_FIX}")


def _check_host(href: str, host: str, port: int | None, policy: HrefPolicy, what: str) -> None:
    if policy.host_allowed(host, port) or policy.allow_private:
        return
    ip = _literal_ip(host)
    if ip is not None:
        reason = _non_public(ip)
        if reason:
            raise _refuse(href, what, f"host {host} is {reason}")
        return
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        raise _refuse(href, what, f"host {host} is a loopback address")
    if policy.resolve:
        for addr in _resolve(host, port):
            reason = _non_public(addr)
            if reason:
                raise _refuse(href, what, f"host {host} resolves to {addr}, {reason}")


def _check_local(href: str, path: str, policy: HrefPolicy, what: str) -> str:
    if _has_traversal(path):
        raise _refuse(href, what, "its path climbs out of its folder with '..'")
    if not policy.roots:
        raise _refuse(href, what, "local files are not allowed for this catalog")
    real = Path(os.path.realpath(path))
    for root in policy.roots:
        root_real = Path(os.path.realpath(root))
        if real == root_real or real.is_relative_to(root_real):
            return real.as_uri()
    roots = ", ".join(str(r) for r in policy.roots)
    raise _refuse(href, what, f"local file {real} is outside the allowed folder(s) {roots}")


def check_href(href: Any, policy: HrefPolicy, *, what: str = "href") -> str:
    """Check one href against ``policy``; return it (``file://`` hrefs normalised).

    Args:
        href: the href as found in the catalog.
        policy: what is allowed.
        what: how to name the href in messages (e.g. ``"asset 'nir' of item 'X'"``).

    Returns:
        The href to use: unchanged for URLs, a resolved ``file://`` URI for local files.

    Raises:
        InputError: the href is empty, relative, of another scheme, climbs with ``..``,
            names a local file outside the allowed roots, carries credentials, or names a
            private / loopback / link-local host that is not allow-listed.
    """
    if not isinstance(href, str) or not href.strip():
        raise InputError(f"{what} has no href (got {href!r}); every asset needs one.")
    if any(ord(c) < 32 or c in " \x7f" for c in href):
        raise _refuse(href, what, "it holds whitespace or control characters")
    parts = urlsplit(href)
    scheme = parts.scheme.lower()
    if not scheme:
        if not href.startswith("/"):
            raise _refuse(href, what, "it is relative; resolve it against its catalog first")
        return _check_local(href, href, policy, what)
    if len(scheme) == 1:  # a Windows drive letter, e.g. C:/data
        raise _refuse(href, what, "Windows drive paths are not supported")
    if scheme not in policy.schemes:
        allowed = sorted(policy.schemes)
        raise _refuse(href, what, f"scheme '{scheme}' is not one of {allowed}")
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise _refuse(href, what, f"file URI names a remote host '{parts.netloc}'")
        return _check_local(href, unquote(parts.path), policy, what)
    if parts.username is not None or parts.password is not None:
        raise _refuse(href, what, "it carries credentials in the URL (user:password@host)")
    host = parts.hostname
    if not host:
        raise _refuse(href, what, "it names no host")
    if _has_traversal(parts.path):
        raise _refuse(href, what, "its path climbs out of its folder with '..'")
    if scheme == "s3":
        return href
    try:
        port = parts.port
    except ValueError as exc:
        raise _refuse(href, what, f"its port is invalid ({exc})") from exc
    _check_host(href, host, port, policy, what)
    return href


def _redirect_allowed(origin: str, target: str, policy: HrefPolicy) -> bool:
    a, b = urlsplit(origin), urlsplit(target)
    if (a.hostname, a.port) == (b.hostname, b.port):
        return True
    host = (b.hostname or "").lower()
    names = {host, f"{host}:{b.port}" if b.port else host}
    patterns = (*policy.redirect_hosts, *policy.hosts)
    return any(fnmatch.fnmatchcase(n, p.lower()) for p in patterns for n in names)


def check_redirects(
    href: str,
    policy: HrefPolicy,
    *,
    what: str = "href",
    timeout_s: float = 10.0,
    retries: int = 3,
    session: Any = None,
) -> str:
    """Follow an http(s) href's redirects by hand and check every hop; return the final URL.

    A one-byte ranged ``GET`` is sent with redirects off; a ``3xx`` hop must stay on the same
    host or go to an allowed redirect host, and its target must pass :func:`check_href`.
    Other schemes are returned unchanged. Transient failures (connection errors, 429, 5xx) are
    retried ``retries`` times with backoff.

    Raises:
        InputError: a hop is refused, or there are more than ``policy.max_redirects``.
        TransientError: the host did not answer after the retries.
    """
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3 import Retry

    if urlsplit(href).scheme not in {"http", "https"}:
        return href
    own = session is None
    if own:
        session = requests.Session()
        retry = Retry(
            total=retries,
            backoff_factor=0.2,
            status_forcelist=(429, 500, 502, 503, 504),
            allowed_methods=None,
            redirect=False,
            raise_on_redirect=False,
            raise_on_status=False,
            respect_retry_after_header=True,
        )
        session.mount("http://", HTTPAdapter(max_retries=retry))
        session.mount("https://", HTTPAdapter(max_retries=retry))
    current = href
    try:
        for _hop in range(policy.max_redirects + 1):
            try:
                resp = session.get(
                    current,
                    headers={"Range": "bytes=0-0"},
                    allow_redirects=False,
                    timeout=timeout_s,
                    stream=True,
                )
                resp.close()
            except requests.RequestException as exc:
                raise TransientError(
                    f"{what} '{redact_url(current)}' did not answer after {retries} retries "
                    f"({type(exc).__name__}); check the host and retry later."
                ) from exc
            if not resp.is_redirect:
                return current
            location = resp.headers.get("Location", "")
            target = urljoin(current, location)
            if not _redirect_allowed(href, target, policy):
                raise InputError(
                    f"{what} '{redact_url(href)}' redirects to '{redact_url(target)}', another "
                    "host that is not allowed; fix the href or allow the host in "
                    f"{ENV_REDIRECT_HOSTS}."
                )
            check_href(target, policy, what=f"{what} (redirect target)")
            current = target
        raise InputError(
            f"{what} '{redact_url(href)}' redirects more than {policy.max_redirects} times; "
            "fix the href."
        )
    finally:
        if own:
            session.close()


def check_hrefs(
    hrefs: Sequence[tuple[str, str]], policy: HrefPolicy, *, redirects: bool = False
) -> list[str]:
    """:func:`check_href` (and optionally :func:`check_redirects`) for ``(what, href)`` pairs."""
    checked = [check_href(h, policy, what=w) for w, h in hrefs]
    if redirects:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(
                pool.map(
                    lambda wh: check_redirects(wh[1], policy, what=wh[0]),
                    [(w, h) for (w, _), h in zip(hrefs, checked, strict=True)],
                )
            )
    return checked
