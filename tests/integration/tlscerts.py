"""tlscerts.py — test certificates made at test time with the openssl
command: a CA, a server certificate for 127.0.0.1/localhost, an expired one,
one for another host, one signed by an unknown CA, and client certificates
for operators (subject CN operator-<id>)."""

import os
import subprocess


def _openssl(*args, cwd):
    r = subprocess.run(["openssl"] + list(args), cwd=cwd, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError("openssl %s: %s" % (" ".join(args), r.stderr))
    return r.stdout


class CertSet:
    """Files under dir: ca.pem, ca2.pem (an unrelated CA) and for each
    issued certificate NAME.pem + NAME.key (keys mode 0600)."""

    def __init__(self, dir):
        self.dir = dir
        os.makedirs(dir, exist_ok=True)
        self._ca("ca", "gpumatch test CA")
        self._ca("ca2", "some other CA")

    def path(self, name):
        return os.path.join(self.dir, name)

    def _key(self, name):
        _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                 "-out", name + ".key", cwd=self.dir)
        os.chmod(self.path(name + ".key"), 0o600)

    def _ca(self, name, cn):
        self._key(name)
        _openssl("req", "-x509", "-new", "-key", name + ".key", "-out", name + ".pem",
                 "-days", "30", "-subj", "/CN=" + cn,
                 "-addext", "basicConstraints=critical,CA:true",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=self.dir)

    def issue(self, name, cn, sans=(), ca="ca", client=False, expired=False):
        """A certificate NAME.pem signed by ca; sans like "DNS:localhost",
        "IP:127.0.0.1". expired: valid only in the past. Returns (cert, key)."""
        self._key(name)
        _openssl("req", "-new", "-key", name + ".key", "-out", name + ".csr",
                 "-subj", "/CN=" + cn, cwd=self.dir)
        ext = ["basicConstraints=CA:false",
               "extendedKeyUsage=" + ("clientAuth" if client else "serverAuth")]
        if sans:
            ext.append("subjectAltName=" + ",".join(sans))
        with open(self.path(name + ".ext"), "w") as f:
            f.write("\n".join(ext) + "\n")
        args = ["x509", "-req", "-in", name + ".csr", "-CA", ca + ".pem", "-CAkey", ca + ".key",
                "-CAcreateserial", "-out", name + ".pem", "-extfile", name + ".ext"]
        if expired:
            # openssl x509 (3.0) has no -not_before/-not_after: sign with the
            # ca command, whose -startdate/-enddate take any dates
            return self._issue_expired(name, ca)
        _openssl(*(args + ["-days", "30"]), cwd=self.dir)
        return self.path(name + ".pem"), self.path(name + ".key")

    def _issue_expired(self, name, ca):
        d = self.dir
        db = os.path.join(d, "ca-db-" + name)
        os.makedirs(db, exist_ok=True)
        open(os.path.join(db, "index.txt"), "w").close()
        with open(os.path.join(db, "serial"), "w") as f:
            f.write("%x\n" % (0x1000 + len(name)))
        conf = os.path.join(db, "ca.cnf")
        with open(conf, "w") as f:
            f.write("[ca]\ndefault_ca=d\n[d]\ndir=%s\ndatabase=$dir/index.txt\n"
                    "serial=$dir/serial\nnew_certs_dir=$dir\ndefault_md=sha256\n"
                    "policy=p\nunique_subject=no\ncopy_extensions=copy\n"
                    "[p]\ncommonName=supplied\n" % db)
        _openssl("ca", "-batch", "-config", conf, "-cert", ca + ".pem", "-keyfile", ca + ".key",
                 "-in", name + ".csr", "-out", name + ".pem", "-startdate", "20200101000000Z",
                 "-enddate", "20200201000000Z", "-extfile", name + ".ext", "-notext", cwd=d)
        return self.path(name + ".pem"), self.path(name + ".key")
