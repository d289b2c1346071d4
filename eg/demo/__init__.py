"""Things to run eg against: a real HTTP/1.1 origin for ``scripts/demo`` and the tests.

``python -m eg.demo.origin --port 9001 --name a`` serves the endpoints documented in
:mod:`eg.demo.origin`. Nothing here is imported by the gateway itself, and importing this
package has no side effects.
"""
