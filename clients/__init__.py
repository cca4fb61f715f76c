"""Reference clients for services that consume ServicePro (copy a module, or import it)."""
