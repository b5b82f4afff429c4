#!/usr/bin/env bash
# System packages the test suite needs, installed only when missing (Debian/Ubuntu):
# a real headless browser for the forecast page's test (it fails, never skips, without
# one) and a JVM (Java 17+) for the Spark tests.
set -euo pipefail
SUDO=$([ "$(id -u)" -eq 0 ] && echo "" || echo "sudo")
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
command -v java >/dev/null 2>&1 || need+=(openjdk-17-jre-headless)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing system packages: ${need[*]}"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${need[@]}"
fi
