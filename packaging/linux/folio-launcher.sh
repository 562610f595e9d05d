#!/bin/sh
# /usr/bin/folio: start the installed app (it lives in /opt/folio with its libraries).
exec /opt/folio/folio "$@"
