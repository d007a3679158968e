"""petvault's PKI: the development CAs, device and operator certificates, and inspection.

Start with `certs.pki` for the library interface, `certs.naming` for the device
id rule, and `certs.cli` for the ``petvault certs`` command.
"""
