"""xenops-cli: drive a xenopsd by hand or from scripts.

`__main__` parses the command line and maps failures to exit codes,
`commands` holds the subcommands, `session` the calls and the waiting on
tasks, `render` the tables, JSON and progress bars, `xlconfig` the reader of
xl-style VM configs. It talks to the daemon only through
`xenopsd.rpc.client`, so it works over every transport the daemon serves.
"""
