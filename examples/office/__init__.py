"""The office example: two ministries, each with a real Postfix, a real Dovecot and a securemail gateway.

run.py runs the scenario (``make office``); tests/office/test_office.py runs the
same one under pytest. instances.py starts the private Postfix and Dovecot from
the templates of postfix/ and dovecot/; clients.py drives the people's programs
(swaks, neomutt, mbsync, imaplib, GnuPG); tap.py records what crosses between the
gateways; scenario.py sets the two ministries up; paths.py checks the five paths.
"""
