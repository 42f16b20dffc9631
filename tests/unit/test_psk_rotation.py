"""Changing a tunnel's pre-shared key without an outage (README "Changing a PSK"): three reloads per side,
one side after the other, with real IKE and ESP between two Keyings. The SAs in place survive every
step (a PSK only matters at the next authentication), and a new IKE SA authenticates at every step, in
either direction. Skipping the first step is the baseline that fails."""

from __future__ import annotations

from pathlib import Path

from tests.unit.test_config_ike import write_file
from tests.unit.test_keying import Link, Site, _spi_out, _up
from tunnel.app.reload import plan_reload
from tunnel.config.loader import load_config

NEW = b"the-new-pre-shared-key-0123456789abcdef"


def reload(site: Site, link: Link, *, psk: str, accept: str | None) -> None:
    """Rewrite the site's psk_file/accept_psk_file lines and reload, as `sitelink reload` does."""
    path = site.keying.config.path
    lines = [line for line in path.read_text().splitlines() if "accept_psk_file" not in line]
    out = []
    for line in lines:
        if "psk_file:" in line:
            indent = line[: len(line) - len(line.lstrip())]
            line = f"{indent}psk_file: {psk}"
            if accept:
                line += f"\n{indent}accept_psk_file: {accept}"
        out.append(line)
    path.write_text("\n".join(out) + "\n")
    new = load_config(path)
    plan = plan_reload(site.keying.config, new)
    assert [t.name for t in plan.kept] == [site.peer] and not plan.gone  # the SAs stay
    site.keying.reconfigure(new, plan, link.now)
    link.pump()


def steps(link: Link) -> list[tuple[Site, str, str | None]]:
    """(site, psk_file, accept_psk_file) of each reload: 1. accept the new key, 2. send it (accepting the
    old one), 3. forget the old one; each step on hq, then on the branch."""
    old = {link.hq: "hq.psk", link.br: "branch1.psk"}
    sites = (link.hq, link.br)
    return ([(site, old[site], "new.psk") for site in sites] + [(site, "new.psk", old[site]) for site in sites]
            + [(site, "new.psk", None) for site in sites])


def fresh_ike_sa(link: Link, initiator: Site) -> bool:
    """Tear the tunnel down and let `initiator` set it up again: a new authentication with today's keys."""
    initiator.keying.terminate(initiator.peer, link.now)
    link.pump()
    initiator.keying.initiate(initiator.peer, link.now, operator=True)
    link.pump()
    return link.send(link.hq, 7) and link.send(link.br, 7)


def test_the_documented_three_step_change_never_breaks_the_tunnel(tmp_path: Path) -> None:
    link = _up(Link(tmp_path))
    hq, br = link.hq, link.br
    for site in (hq, br):
        write_file(site.keying.config.path.parent / "new.psk", NEW + b"\n")
    spi = _spi_out(hq)
    for n, (site, psk, accept) in enumerate(steps(link)):
        reload(site, link, psk=psk, accept=accept)
        assert _spi_out(hq) == spi and link.send(hq, n) and link.send(br, n)  # the running SAs carry on
    assert fresh_ike_sa(link, hq) and fresh_ike_sa(link, br)


def test_a_new_ike_sa_authenticates_at_every_step_in_both_directions(tmp_path: Path) -> None:
    link = _up(Link(tmp_path))
    hq, br = link.hq, link.br
    for site in (hq, br):
        write_file(site.keying.config.path.parent / "new.psk", NEW + b"\n")
    for site, psk, accept in steps(link):
        reload(site, link, psk=psk, accept=accept)
        assert fresh_ike_sa(link, hq), f"hq could not set up a new IKE SA after {site.name} -> {psk}/{accept}"
        assert fresh_ike_sa(link, br), f"br could not set up a new IKE SA after {site.name} -> {psk}/{accept}"


def test_switching_one_side_without_the_accept_step_breaks_new_ike_sas(tmp_path: Path) -> None:
    """The baseline: HQ sends the new key before the branch accepts it: the SAs in place still carry
    traffic, but the next IKE SA fails AUTH (which is why the procedure has a first step)."""
    link = _up(Link(tmp_path))
    write_file(link.hq.keying.config.path.parent / "new.psk", NEW + b"\n")
    reload(link.hq, link, psk="new.psk", accept=None)
    assert link.send(link.hq, 1)
    assert not fresh_ike_sa(link, link.hq)
    failed = link.hq.keying.tunnels["branch1"].stats.handshakes_failed
    assert failed.get("authentication_failed", 0) >= 1, failed
