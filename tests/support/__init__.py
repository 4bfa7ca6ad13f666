"""What the tests share, one module per concern (pytest fixtures live in tests/conftest.py).

- `git`: the one git runner, its fixed identity and dates, `ls-tree`/`cat-file` readers.
- `repos`: test repositories (a small varied tree, a generated big one, a long history).
- `images`: images through the product (`image_of`) or git's own pack wrapped raw (`packed_image`).
- `oracle`: git as the oracle of what an image holds.
- `corrupt`: damage an image file on purpose.
- `cli`: the `docteur` command, in this process or in a child.
- `protocol`: raw protocol clients (in memory, over a socket, over the VM's port).
- `servers`: git servers and the guest's server on loopback; `relay`: a server that stalls;
  `tls`: throwaway certificates.
- `store`, `crash`: the generation store's helpers and its crash-state model.
- `vm`: what the microVM tests need (skip marker, guest artifacts, process checks).
"""
