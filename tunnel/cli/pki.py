"""`sitelink pki ca|intermediate|issue|revoke|crl|show`: a site CA for IKEv2 certificate authentication.

tunnel/cli/main.py calls add_commands(commands) with its sub-parser collection; each sub-command sets
`handler`, which returns the exit status. Errors are raised as SitelinkError (one line from cli.main).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tunnel.config.keytypes import KEY_TYPES


def add_commands(subparsers: argparse._SubParsersAction) -> None:  # noqa: SLF001 (argparse's own type)
    group = subparsers.add_parser(
        "pki", help="site CA: create it, issue gateway certificates, show a certificate",
        description="A small certificate authority for IKEv2 certificate authentication between gateways.",
    )
    commands = group.add_subparsers(dest="pki_command", required=True, metavar="PKI_COMMAND")

    ca = commands.add_parser(
        "ca", help="create a CA: DIR/ca.crt (copy to every gateway) and DIR/ca.key (keep offline)",
        description="Creates DIR/ca.crt (mode 0644) and DIR/ca.key (mode 0600); never overwrites them.",
    )
    ca.add_argument("directory", type=Path, metavar="DIR")
    ca.add_argument("--name", required=True, help="the CA's common name, e.g. 'Acme Site CA'")
    _key_options(ca, default_days=3650)
    ca.set_defaults(handler=_cmd_ca)

    issue = commands.add_parser(
        "issue", help="issue a gateway certificate and key signed by the CA",
        description="Writes OUT/<id>.crt (0644) and OUT/<id>.key (0600, copy it to that gateway only).",
    )
    issue.add_argument("--ca-dir", type=Path, required=True, metavar="DIR", help="holds ca.crt and ca.key")
    issue.add_argument("--out", type=Path, required=True, metavar="DIR", help="where to write the new files")
    issue.add_argument("--id", required=True, dest="identity", metavar="ID",
                       help="the gateway's IKE identity: gw.hq.example, 198.18.1.2, fd00::1, "
                            "user@example.net or 'CN=gw1,O=Acme'")
    issue.add_argument("--ocsp-url", metavar="URL", help="the OCSP responder peers ask about this certificate "
                                                          "(written into its Authority Information Access)")
    issue.add_argument("--crl-url", metavar="URL", help="where peers fetch the CA's CRL (written into the "
                                                        "certificate's CRL distribution points)")
    _key_options(issue, default_days=825)
    issue.set_defaults(handler=_cmd_issue)

    sub = commands.add_parser(
        "intermediate", help="create an intermediate CA signed by a CA (e.g. one per region)",
        description="Creates DIR/ca.crt and DIR/ca.key signed by the CA in --ca-dir; `issue --ca-dir DIR` then "
                    "issues from it. Gateways with such certificates list DIR/ca.crt in gateway.pki.intermediates.",
    )
    sub.add_argument("directory", type=Path, metavar="DIR")
    sub.add_argument("--ca-dir", type=Path, required=True, metavar="PARENT",
                     help="holds the parent's ca.crt and ca.key")
    sub.add_argument("--name", required=True, help="the intermediate CA's common name")
    _key_options(sub, default_days=1825)
    sub.set_defaults(handler=_cmd_intermediate)

    revoke = commands.add_parser(
        "revoke", help="revoke certificates: add them to the CA's CRL (DIR/ca.crl) and sign it again",
        description="Adds each CERT's serial to DIR/ca.crl (created if missing) and signs it again. Copy the CRL "
                    "to every gateway (gateway.pki.crl) and run `sitelink reload`: SAs of a revoked peer end.",
    )
    revoke.add_argument("--ca-dir", type=Path, required=True, metavar="DIR", help="the CA that issued them")
    revoke.add_argument("certificates", type=Path, nargs="+", metavar="CERT")
    revoke.add_argument("--days", type=_days, default=7, metavar="N",
                        help="the CRL's validity: sign it again (`pki crl`) before it ends (default: %(default)s)")
    revoke.set_defaults(handler=_cmd_revoke)

    crl = commands.add_parser("crl", help="sign the CA's CRL again (a fresh nextUpdate), revoking nothing new")
    crl.add_argument("--ca-dir", type=Path, required=True, metavar="DIR")
    crl.add_argument("--days", type=_days, default=7, metavar="N", help="validity (default: %(default)s)")
    crl.set_defaults(handler=_cmd_revoke, certificates=[])

    show = commands.add_parser("show", help="print a certificate's subject, issuer, names, validity and key")
    show.add_argument("certificate", type=Path, metavar="CERT")
    show.set_defaults(handler=_cmd_show)


def _key_options(parser: argparse.ArgumentParser, default_days: int) -> None:
    parser.add_argument("--key-type", choices=KEY_TYPES, default="ecdsa-p256",
                        help="key algorithm (default: %(default)s)")
    parser.add_argument("--days", type=_days, default=default_days, metavar="N",
                        help="validity in days (default: %(default)s)")


def _days(text: str) -> int:
    try:
        days = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of days: {text!r}") from None
    if not 1 <= days <= 36500:
        raise argparse.ArgumentTypeError(f"must be from 1 to 36500, not {days}")
    return days


def _cmd_ca(args: argparse.Namespace) -> int:
    from tunnel.config import pkifiles

    cert_path, key_path = pkifiles.create_ca(args.directory, args.name, args.key_type, args.days)
    cert = pkifiles.load_certificate(cert_path)
    print(f"created CA {cert.subject.rfc4514_string()} ({pkifiles.key_description(cert.public_key())}), "
          f"valid until {cert.not_valid_after_utc:%Y-%m-%d}")
    print(f"  {cert_path}  copy to every gateway (trust anchor)")
    print(f"  {key_path}  mode 0600; keep it off the gateways, it signs every certificate")
    return 0


def _cmd_issue(args: argparse.Namespace) -> int:
    from tunnel.config import pkifiles

    ca_dir: Path = args.ca_dir
    cert_path, key_path = pkifiles.issue(ca_dir / pkifiles.CA_CERT_NAME, ca_dir / pkifiles.CA_KEY_NAME, args.out,
                                    args.identity, args.key_type, args.days, ocsp_url=args.ocsp_url,
                                         crl_url=args.crl_url)
    cert = pkifiles.load_certificate(cert_path)
    print(f"issued {cert.subject.rfc4514_string() or args.identity} by {cert.issuer.rfc4514_string()} "
          f"({pkifiles.key_description(cert.public_key())}), valid until {cert.not_valid_after_utc:%Y-%m-%d}")
    print(f"  {cert_path}")
    print(f"  {key_path}  mode 0600; copy it to that gateway only")
    return 0


def _cmd_intermediate(args: argparse.Namespace) -> int:
    from tunnel.config import pkifiles

    parent: Path = args.ca_dir
    cert_path, key_path = pkifiles.create_intermediate(parent / pkifiles.CA_CERT_NAME, parent / pkifiles.CA_KEY_NAME,
                                                       args.directory, args.name, args.key_type, args.days)
    cert = pkifiles.load_certificate(cert_path)
    print(f"created intermediate CA {cert.subject.rfc4514_string()} under {cert.issuer.rfc4514_string()} "
          f"({pkifiles.key_description(cert.public_key())}), valid until {cert.not_valid_after_utc:%Y-%m-%d}")
    print(f"  {cert_path}  list it in gateway.pki.intermediates of the gateways it issues for")
    print(f"  {key_path}  mode 0600; keep it off the gateways")
    return 0


def _cmd_revoke(args: argparse.Namespace) -> int:
    from tunnel.config import pkifiles

    ca_dir: Path = args.ca_dir
    crl_path = ca_dir / pkifiles.CRL_NAME
    crl = pkifiles.revoke(ca_dir / pkifiles.CA_CERT_NAME, ca_dir / pkifiles.CA_KEY_NAME, crl_path,
                          args.certificates, args.days)
    for path in args.certificates:
        print(f"revoked {path} (serial {pkifiles.load_certificate(path).serial_number:x})")
    print(f"{crl_path}: {len(list(crl))} revoked certificate(s), next update due "
          f"{crl.next_update_utc:%Y-%m-%d %H:%M} UTC; copy it to every gateway and run `sitelink reload`")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from tunnel.config import pkifiles

    for index, cert in enumerate(pkifiles.load_certificates(args.certificate)):
        if index:
            print()
        for line in pkifiles.describe(cert):
            print(line)
    return 0
