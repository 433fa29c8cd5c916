#!/usr/bin/env python3
"""Writes GoBGP's API protos as the installed gobgpd speaks them.

Usage: python3 from_binary.py /usr/bin/gobgpd OUT_DIR

A Go program built with google.golang.org/protobuf carries the
FileDescriptorProto of every .proto file it was compiled from. This finds
those of gobgp.proto, attribute.proto and capability.proto (package
`apipb`) in the binary and prints them back as .proto text: the same
messages, fields, numbers, enums and services as the daemon's, without the
upstream comments. Standard library only; nothing is downloaded.
"""

import sys

FILES = ["gobgp.proto", "attribute.proto", "capability.proto"]
HEADER = """// GoBGP's gRPC API ({name}), as gobgpd {version} speaks it: regenerated
// by from_binary.py from the file descriptor embedded in the daemon (see
// README.md beside this file). GoBGP is Apache-2.0; this file carries the
// notice of its upstream original:
//
// Copyright (C) 2015-2022 Nippon Telegraph and Telephone Corporation.
//
// Permission is hereby granted, free of charge, to any person
// obtaining a copy of this software and associated documentation files
// (the "Software"), to deal in the Software without restriction,
// including without limitation the rights to use, copy, modify, merge,
// publish, distribute, sublicense, and/or sell copies of the Software,
// and to permit persons to whom the Software is furnished to do so,
// subject to the following conditions:
//
// The above copyright notice and this permission notice shall be
// included in all copies or substantial portions of the Software.
//
// THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND,
// EXPRESS OR IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF
// MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND
// NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE
// LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION
// OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION
// WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
"""

TYPES = {1: "double", 2: "float", 3: "int64", 4: "uint64", 5: "int32", 6: "fixed64", 7: "fixed32", 8: "bool",
         9: "string", 12: "bytes", 13: "uint32", 15: "sfixed32", 16: "sfixed64", 17: "sint32", 18: "sint64"}
# FileDescriptorProto: field number -> allowed wire types.
FILE_FIELDS = {1: {2}, 2: {2}, 3: {2}, 4: {2}, 5: {2}, 6: {2}, 7: {2}, 8: {2}, 9: {2}, 10: {0, 2}, 11: {0, 2},
               12: {2}, 14: {0}}


def varint(b, i):
    n = shift = 0
    while True:
        c = b[i]
        i += 1
        n |= (c & 0x7F) << shift
        shift += 7
        if c < 0x80:
            return n, i


def fields(b, strict=None):
    """(number, wire type, value) of each field; with `strict`, stops at the
    first field that cannot belong to the message (the descriptor's end)."""
    i = 0
    out = []
    while i < len(b):
        start = i
        try:
            key, i = varint(b, i)
        except IndexError:
            break
        num, wt = key >> 3, key & 7
        if strict is not None and wt not in strict.get(num, ()):
            return out, start
        if wt == 0:
            v, i = varint(b, i)
        elif wt == 2:
            n, i = varint(b, i)
            v = b[i:i + n]
            if len(v) != n:
                return out, start
            i += n
        elif wt == 5:
            v, i = b[i:i + 4], i + 4
        elif wt == 1:
            v, i = b[i:i + 8], i + 8
        else:
            return out, start
        out.append((num, wt, v))
    return out, i


def get(fs, num):
    return [v for n, _, v in fs if n == num]


def one(fs, num, default=None):
    v = get(fs, num)
    return v[-1] if v else default


def s(v):
    return v.decode() if isinstance(v, bytes) else v


def int32(v):
    return v - (1 << 64) if v >= 1 << 63 else v


class Printer:
    def __init__(self, package):
        self.package = package
        self.lines = []

    def ref(self, name):
        name = s(name)
        if name.startswith("." + self.package + "."):
            return name[len(self.package) + 2:]
        return name.lstrip(".")

    def out(self, depth, text):
        self.lines.append("  " * depth + text if text else "")

    def enum(self, e, depth):
        fs, _ = fields(e)
        self.out(depth, f"enum {s(one(fs, 1))} {{")
        for v in get(fs, 2):
            vf, _ = fields(v)
            self.out(depth + 1, f"{s(one(vf, 1))} = {int32(one(vf, 2, 0))};")
        self.out(depth, "}")

    def field_type(self, f, maps):
        t = one(f, 5)
        if t in (11, 14):
            name = s(one(f, 6))
            if name in maps:
                k, v = maps[name]
                return f"map<{k}, {v}>", True
            return self.ref(name), False
        return TYPES[t], False

    def message(self, m, depth, scope):
        fs, _ = fields(m)
        name = s(one(fs, 1))
        full = f"{scope}.{name}"
        nested = [fields(n)[0] for n in get(fs, 3)]
        maps = {}
        for n in nested:
            opts = one(n, 7)
            if opts is not None and one(fields(opts)[0], 7) == 1:
                kv = [fields(f)[0] for f in get(n, 2)]
                types = [self.field_type(f, {})[0] for f in kv]
                maps[f"{full}.{s(one(n, 1))}"] = tuple(types)
        self.out(depth, f"message {name} {{")
        oneofs = [s(one(fields(o)[0], 1)) for o in get(fs, 8)]
        done_oneofs = set()
        flist = [fields(f)[0] for f in get(fs, 2)]
        for f in flist:
            idx = one(f, 9)
            if idx is not None and one(f, 17) != 1:
                if idx in done_oneofs:
                    continue
                done_oneofs.add(idx)
                self.out(depth + 1, f"oneof {oneofs[idx]} {{")
                for g in flist:
                    if one(g, 9) == idx:
                        t, _ = self.field_type(g, maps)
                        self.out(depth + 2, f"{t} {s(one(g, 1))} = {one(g, 3)};")
                self.out(depth + 1, "}")
                continue
            t, is_map = self.field_type(f, maps)
            label = ""
            if not is_map and one(f, 4) == 3:
                label = "repeated "
            elif one(f, 17) == 1:
                label = "optional "
            self.out(depth + 1, f"{label}{t} {s(one(f, 1))} = {one(f, 3)};")
        for n, raw in zip(nested, get(fs, 3)):
            if f"{full}.{s(one(n, 1))}" not in maps:
                self.message(raw, depth + 1, full)
        for e in get(fs, 4):
            self.enum(e, depth + 1)
        self.out(depth, "}")

    def file(self, fd, version):
        fs, _ = fields(fd)
        name = s(one(fs, 1))
        self.lines.append(HEADER.format(name=name, version=version).rstrip("\n"))
        self.out(0, "")
        self.out(0, f'syntax = "{s(one(fs, 12, b"proto2"))}";')
        self.out(0, "")
        self.out(0, f"package {self.package};")
        self.out(0, "")
        for d in get(fs, 3):
            self.out(0, f'import "{s(d)}";')
        opts = one(fs, 8)
        if opts is not None:
            go = one(fields(opts)[0], 11)
            if go is not None:
                self.out(0, "")
                self.out(0, f'option go_package = "{s(go)}";')
        for svc in get(fs, 6):
            sf, _ = fields(svc)
            self.out(0, "")
            self.out(0, f"service {s(one(sf, 1))} {{")
            for m in get(sf, 2):
                mf, _ = fields(m)
                cs = "stream " if one(mf, 5) == 1 else ""
                ss = "stream " if one(mf, 6) == 1 else ""
                self.out(1, f"rpc {s(one(mf, 1))}({cs}{self.ref(one(mf, 2))}) returns ({ss}{self.ref(one(mf, 3))});")
            self.out(0, "}")
        for m in get(fs, 4):
            self.out(0, "")
            self.message(m, 0, "." + self.package)
        for e in get(fs, 5):
            self.out(0, "")
            self.enum(e, 0)
        return "\n".join(self.lines) + "\n"


def main():
    binary, out_dir = sys.argv[1], sys.argv[2]
    version = sys.argv[3] if len(sys.argv) > 3 else "3.10.0"
    data = open(binary, "rb").read()
    for name in FILES:
        pat = b"\n" + bytes([len(name)]) + name.encode() + b"\x12\x05apipb"
        at = data.find(pat)
        if at < 0:
            sys.exit(f"{binary}: no descriptor of {name} in package apipb")
        _, end = fields(data[at:at + 400_000], strict=FILE_FIELDS)
        text = Printer("apipb").file(data[at:at + end], version)
        with open(f"{out_dir}/{name}", "w") as f:
            f.write(text)
        print(f"{name}: {end} bytes of descriptor, {text.count(chr(10))} lines")


if __name__ == "__main__":
    main()
