"""The suite's GCS emulator serves Beam's FileSystems in this process and in a fresh one, without credential delays."""
import subprocess
import sys

from apache_beam.io.filesystems import FileSystems


def test_filesystems_round_trip_through_the_emulator(gcs):
  path = f"{gcs}/emulator-check/a.txt"
  with FileSystems.create(path) as f:
    f.write(b"hello")
  assert FileSystems.exists(path)
  assert [m.path for m in FileSystems.match([f"{gcs}/emulator-check/*"])[0].metadata_list] == [path]
  with FileSystems.open(path) as f:
    assert f.read() == b"hello"
  FileSystems.delete([path])
  assert not FileSystems.exists(path)


def test_a_fresh_process_reads_it_without_probing_for_credentials(gcs):
  with FileSystems.create(f"{gcs}/emulator-check/b.txt") as f:
    f.write(b"seen")
  code = ("from apache_beam.io.filesystems import FileSystems\n"
          f"print(FileSystems.open('{gcs}/emulator-check/b.txt').read().decode())")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
  assert out.stdout.strip() == "seen"
  # Without usable credentials Beam retries google.auth.default with 2+4+8+16 s of backoff, then says so.
  assert "Unable to find default credentials" not in out.stderr, out.stderr
