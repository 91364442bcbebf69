"""Which file links the VK gateway fetches: https on VK's own hosts, or an origin listed exactly."""

from __future__ import annotations

import pytest

from gateway_vk.media import allowed
from gateway_vk.settings import DEFAULT_FILE_HOSTS, Settings

HOSTS = (*DEFAULT_FILE_HOSTS.split(","), "http://127.0.0.1:8099")


@pytest.mark.parametrize(
    "url",
    [
        "https://sun9-42.userapi.com/impg/abc/x.jpg?size=640x480",
        "https://vk.com/doc1001_6001?hash=0a&dl=1",
        "https://psv4.userapi.com/c23/u1001/audiomsg/d1/ab.ogg",
        "https://vk.ru/doc1_2",
        "http://127.0.0.1:8099/files/a.pdf",
    ],
)
def test_vk_hosts_are_fetched(url: str) -> None:
    assert allowed(url, HOSTS)


@pytest.mark.parametrize(
    "url",
    [
        "http://sun9-42.userapi.com/x.jpg",  # not https
        "https://userapi.com.evil.example/x.jpg",  # a suffix of another name
        "https://evilvk.com/x",  # not a subdomain
        "https://vk.com@169.254.169.254/latest/meta-data",  # credentials trick
        "https://vk.com:8443/doc1_2",  # another port
        "http://127.0.0.1:8098/files/a.pdf",  # not the listed origin
        "http://127.0.0.1:8099@evil.example/",
        "file:///etc/passwd",
        "not a url",
        "",
    ],
)
def test_anything_else_is_not(url: str) -> None:
    assert not allowed(url, HOSTS)


def test_the_default_hosts_are_vks_own() -> None:
    groups = '[{"account": "shop", "group_id": 1, "token": "t", "secret": "callback-secret-0123-Kq7Zt9Wm3xRv"}]'
    hosts = Settings(vk_groups=groups).file_hosts()
    assert "userapi.com" in hosts and "vk.com" in hosts and all("://" not in h for h in hosts)
    with pytest.raises(ValueError, match="OPENLINES_VK_FILE_HOSTS"):
        Settings(vk_groups=groups, vk_file_hosts="ftp://files.example")
