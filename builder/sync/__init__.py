"""`docteur push` and `docteur pull`: an image file kept in sync with a git remote.

remote.py names the remote and the branch (the image remembers them), history.py walks
the image's commits, push.py and pull.py talk to the server through the same dulwich
clients `docteur make` uses (builder/transport.py), received.py reads a fetched pack,
merge.py joins two histories whose changes do not overlap.
"""
