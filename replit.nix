# System packages for Replit (Python 3.11 itself comes from the "python-3.11" module in .replit).
{ pkgs }: {
  deps = [
    pkgs.redis  # redis-server on the PATH: scripts/replit.sh starts it when REDIS_URL does not answer
  ];
}
