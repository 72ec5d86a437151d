# Copyright: Basalt developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations


class ModuleDocFragment:
    """iSCSI options shared by the modules (argument specs: module_args.CHAP and module_args.TARGET_BACKEND)."""

    # The CHAP credentials of a login (the initiator's side and, for mutual CHAP, the target's).
    CHAP = r"""
options:
  chap:
    description:
      - CHAP credentials of the login. Without it, no CHAP.
      - Secrets are 1-255 printable ASCII characters without blanks (RFC 3720 recommends 12 to 16 bytes).
    type: dict
    suboptions:
      user:
        description: The user name the initiator logs in with.
        type: str
        required: true
      password:
        description: The initiator's secret.
        type: str
        required: true
      mutual_user:
        description: The user name the target answers with (mutual CHAP). Needs O(chap.mutual_password).
        type: str
      mutual_password:
        description: The target's secret for mutual CHAP; it must differ from O(chap.password).
        type: str
"""

    # Which iSCSI target service exports, and where it keeps its configuration.
    TARGET_BACKEND = r"""
options:
  backend:
    description:
      - The iSCSI target implementation. V(tgt) is the userspace C(tgtd) (package tgt); V(lio) is the kernel's
        LIO, driven through the Python library rtslib-fb (package python3-rtslib-fb), which must be importable
        by the module's Python.
    type: str
    choices: [tgt, lio]
    default: tgt
  base_iqn:
    description:
      - Targets are named O(base_iqn), a colon and the volume id. An C(iqn.) name without a C(:) part; the agent's
        default.
    type: str
    default: iqn.2026-11.dev.basalt
  tgt_control_port:
    description:
      - The control port (C(-C)) of a private C(tgtd); the system daemon when not set. Requests go to that
        C(tgtd)'s management socket (C(/var/run/tgtd/socket.N)).
    type: int
  tgt_conf:
    description:
      - The tgt configuration file the export is persisted in (mode 0600, since it holds CHAP secrets). It also
        carries Basalt's record of tgt grants and their CHAP secrets (tgtd cannot show secrets), so one write
        keeps both.
    type: path
    default: /etc/tgt/conf.d/basalt.conf
  tgt_record:
    description:
      - Where an older Basalt kept its record of tgt grants (read while O(tgt_conf) carries none, then removed);
        the lock on the target service is this path plus C(.lock). The default is the agent's, under its default
        state directory, so that both take the same lock.
    type: path
    default: /var/lib/basalt/iscsi/tgt-grants.json
  lio_save_file:
    description:
      - Where the LIO configuration is saved. By default rtslib-fb's own save file, the one its boot service
        restores (Debian C(/etc/rtslib-fb-target/saveconfig.json)).
    type: path
requirements:
  - tgt (C(tgtd), and C(tgtadm), which tells the release and runs where its socket layout is not known) for
    O(backend=tgt)
  - rtslib-fb, configfs and the kernel's target modules for O(backend=lio)
"""
