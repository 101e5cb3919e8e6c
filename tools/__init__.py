"""Developer tooling, outside the package users install: `make bench` (bench) and `make check-recipes`
(check_recipes, with the offline architecture table in architectures). Run from the repository root."""
