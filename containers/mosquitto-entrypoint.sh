#!/bin/sh
# Start mosquitto with /etc/mosquitto/edgedl.conf (when mounted) plus a listener on
# $MQTT_PORT ($MQTT_BIND: one address, default all), anonymous clients allowed unless
# MQTT_ANONYMOUS=false (then mount a password file and name it in edgedl.conf), and the
# persistence file on the volume /var/lib/mosquitto.
set -eu
conf=/tmp/mosquitto.conf
{
  if [ -f /etc/mosquitto/edgedl.conf ]; then cat /etc/mosquitto/edgedl.conf; fi
  echo "persistence_location /var/lib/mosquitto/"
  echo "listener ${MQTT_PORT:-1883} ${MQTT_BIND:-}"
  echo "allow_anonymous ${MQTT_ANONYMOUS:-true}"
} > "$conf"
exec mosquitto -c "$conf" "$@"
