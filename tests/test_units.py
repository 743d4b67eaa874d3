"""Pure functions: routing rewrites, header rules, secret masking (http1's head writer and
URL split: test_http1_units.py)."""
import pytest

from orproxy.headers import mask_secret, masked, strip_hop_by_hop
from orproxy.routes import Route, RouteTable


def table(*routes):
    return RouteTable([Route(source=s, destination=d, name=s) for s, d in routes])


@pytest.mark.parametrize("path, expected", [
    ("/api/v1/chat/completions", "https://openrouter.ai/api/v1/chat/completions"),
    ("/api/v1", "https://openrouter.ai/api/v1"),
    ("/api/v1x", None),
    ("/openrouter/chat/completions", "https://openrouter.ai/api/v1/chat/completions"),
    ("/openrouter/a%2fb?x=%41", "https://openrouter.ai/api/v1/a%2fb?x=%41"),
    ("/api/v1/models/special", "http://models.local/api/v1/models/special"),
    ("/elsewhere", None),
])
def test_longest_prefix_and_both_rewrites(path, expected):
    routes = table(("/api/v1/", "https://openrouter.ai/"),
                   ("/openrouter/", "https://openrouter.ai/api/v1/"),
                   ("/api/v1/models/", "http://models.local/"))
    route = routes.match(path.partition("?")[0])
    if expected is None:
        assert route is None
    else:
        assert route.origin + route.upstream_target(path) == expected


def test_root_source_matches_everything():
    route = table(("/", "http://up:8000/base/")).match("/x/y")
    assert route.origin + route.upstream_target("/x/y") == "http://up:8000/base/x/y"


def test_hop_by_hop_and_connection_named_headers_are_dropped():
    headers = [("Connection", "keep-alive, X-Secret-Hop"), ("X-Secret-Hop", "1"), ("Keep-Alive", "5"),
               ("TE", "trailers"), ("Upgrade", "h2c"), ("Proxy-Authorization", "x"), ("Accept", "*/*"),
               ("Authorization", "Bearer k")]
    assert strip_hop_by_hop(headers) == [("Accept", "*/*"), ("Authorization", "Bearer k")]
    assert ("Upgrade", "h2c") in strip_hop_by_hop(headers, keep=frozenset({"upgrade"}))


@pytest.mark.parametrize("name, value, shown", [
    ("Authorization", "Bearer sk-or-v1-0123456789abcd", "Bearer ****abcd"),
    ("X-Api-Key", "sk-ant-api03-xyzqrst", "****qrst"),
    ("Api-Key", "short", "****"),
    ("Authorization", "Bearer short", "Bearer ****"),
    ("Cookie", "session=0123456789abcdef", "****"),
    ("Set-Cookie", "a=b; Path=/", "****"),
])
def test_secrets_keep_scheme_and_last_four(name, value, shown):
    assert mask_secret(name, value) == shown


def test_masking_is_case_insensitive_and_configurable():
    headers = [("AUTHORIZATION", "Bearer 0123456789abcdef"), ("X-Custom-Token", "0123456789abcdef")]
    assert masked(headers, frozenset({"authorization"})) == [("AUTHORIZATION", "Bearer ****cdef"),
                                                             ("X-Custom-Token", "0123456789abcdef")]
    assert masked(headers, frozenset({"x-custom-token"}))[1] == ("X-Custom-Token", "****cdef")

