"""The router's imperative shell: read state, ask ``router.core``, apply what it decides."""
