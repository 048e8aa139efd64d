#!/usr/bin/python3
"""Drive shoald over D-Bus with Debian's python3-dbus, as a third-party tool would.

usage: scale_and_watch.py ADDRESS SERVICE REPLICAS

Lists every object with GetManagedObjects, finds the object of SERVICE by its Name property,
calls its Scale method, then follows InterfacesAdded and PropertiesChanged (no polling) until
REPLICAS tasks of the service run. Prints one JSON object with what it saw and exits 0. Exits 3
when the bus refuses the call (org.freedesktop.DBus.Error.AccessDenied), 1 on anything else or
when the tasks do not run within 120 seconds.
"""

import json
import sys

import dbus
from dbus.mainloop.glib import DBusGMainLoop
from gi.repository import GLib

BUS = "org.shoal.Shoal1"
ROOT = "/org/shoal/Shoal1"
SERVICE = "org.shoal.Shoal1.Service"
TASK = "org.shoal.Shoal1.Task"


def main():
    address, name, replicas = sys.argv[1], sys.argv[2], int(sys.argv[3])
    DBusGMainLoop(set_as_default=True)
    bus = dbus.bus.BusConnection(address)
    loop = GLib.MainLoop()
    tasks = {}  # task path -> properties seen so far
    report = {"objects": 0, "interfaces_added": 0, "properties_changed": 0, "states": {}}
    outcome = {"code": 1}

    def note(path, props, via_signal):
        task = tasks.setdefault(str(path), {})
        task.update({str(k): str(v) for k, v in props.items()})
        if via_signal and task.get("Service") == name and "CurrentState" in props:
            report["states"].setdefault(str(path), []).append(str(props["CurrentState"]))

    def running():
        return sum(
            1
            for t in tasks.values()
            if t.get("Service") == name
            and t.get("CurrentState") == "running"
            and t.get("DesiredState") == "running"
        )

    def check():
        if running() == replicas:
            outcome["code"] = 0
            loop.quit()

    def on_added(path, interfaces):
        if TASK in interfaces:
            report["interfaces_added"] += 1
            note(path, interfaces[TASK], True)
            check()

    def on_changed(interface, changed, invalidated, path=None):
        if interface == TASK and str(path) in tasks:
            report["properties_changed"] += 1
            note(path, changed, True)
            check()

    bus.add_signal_receiver(
        on_added,
        signal_name="InterfacesAdded",
        dbus_interface="org.freedesktop.DBus.ObjectManager",
        bus_name=BUS,
        path=ROOT,
    )
    bus.add_signal_receiver(
        on_changed,
        signal_name="PropertiesChanged",
        dbus_interface="org.freedesktop.DBus.Properties",
        bus_name=BUS,
        path_keyword="path",
    )

    manager = dbus.Interface(bus.get_object(BUS, ROOT), "org.freedesktop.DBus.ObjectManager")
    objects = manager.GetManagedObjects()
    report["objects"] = len(objects)
    service_path = None
    for path, interfaces in objects.items():
        if SERVICE in interfaces and interfaces[SERVICE]["Name"] == name:
            service_path = path
        if TASK in interfaces:
            note(path, interfaces[TASK], False)
    if service_path is None:
        print(json.dumps({"error": f"no object for service {name}"}))
        return 1
    report["service_path"] = str(service_path)

    service = dbus.Interface(bus.get_object(BUS, service_path), SERVICE)
    try:
        service.Scale(dbus.UInt64(replicas))
    except dbus.exceptions.DBusException as e:
        if e.get_dbus_name() == "org.freedesktop.DBus.Error.AccessDenied":
            print(json.dumps({"denied": e.get_dbus_message()}))
            return 3
        raise

    def give_up():
        loop.quit()
        return False

    GLib.timeout_add_seconds(120, give_up)
    check()
    if outcome["code"] != 0:
        loop.run()
    report["running"] = running()
    print(json.dumps(report))
    return outcome["code"]


if __name__ == "__main__":
    sys.exit(main())
