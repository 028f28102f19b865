"""HostStack.send keeps its input and framing buffers for the next send (host/tx_frame.py
_pack and stack_send, docs/send-path.md "Host framing"): nothing a send returns may lie in
them, so results, built batches and later sends stay intact; host_pack refuses rows that do
not match its packets."""
import random

import numpy as np
import pytest
from scapy.layers.inet import IP, UDP

from ipsecoffload.control.miniport import Miniport
from ipsecoffload.host import tx_frame
from ipsecoffload.host.saconfig import SaConfig
from ipsecoffload.host.stack import HostStack
from ipsecoffload.host.tx_frame import HOST_PKT_DTYPE, SCRATCH_KEEP_MAX, kernels

from test_e2e import compiled_framing_calls

pytestmark = pytest.mark.skipif(kernels() is None, reason="the compiled kernels are not built")


def packets(seed: int, n: int, size_max: int = 1500) -> list:
    rng = random.Random(seed)
    return [bytes(IP(src="10.0.0.1", dst=f"10.0.{rng.randrange(1, 250)}.9", id=k)
                  / UDP(sport=rng.randrange(1024, 65535), dport=4000)
                  / rng.randbytes(rng.randrange(0, size_max)))
            for k in range(n)]


def stack_and_sa(seed: int = 1):
    stack = HostStack(Miniport())
    config = SaConfig(spi=0x1234 + seed, encryption="aes-gcm-128", key=bytes(range(20)))
    return stack, stack.add_sa(config)


def frames_of(result) -> list:
    return [bytes(f) for f in result.wire.frames()]


def test_results_survive_later_sends():
    stack, sa = stack_and_sa()
    twin_stack, twin_sa = stack_and_sa()
    twin_stack.compiled_framing = False  # the Python framer: its own buffers every time
    results, copies = [], []
    with compiled_framing_calls() as calls:
        for k, size in enumerate((1500, 64, 1500, 9000, 200)):
            batch = packets(k, 64 + 32 * k, size)
            result = stack.send(batch, sa)
            results.append(result)
            copies.append(frames_of(result))
            assert copies[-1] == frames_of(twin_stack.send(batch, twin_sa))
    assert calls == [True] * 5
    # every earlier result still holds its own frames after the sends that followed
    assert [frames_of(r) for r in results] == copies


def test_a_built_batch_survives_later_sends():
    stack, sa = stack_and_sa()
    batch = stack.build(packets(7, 50), sa)
    arena = np.array(batch.arena, copy=True)
    for k in range(4):  # sends that fit in buffers of the build's size
        stack.send(packets(8 + k, 10 + 10 * k), sa)
    assert np.array_equal(batch.arena, arena)


def test_scratch_is_kept_and_bounded():
    stack, sa = stack_and_sa()
    stack.send(packets(1, 100), sa)
    scratch = stack._send_scratch
    kept = scratch["packets"]
    stack.send(packets(2, 50), sa)
    assert scratch["packets"] is kept  # reused, not made again
    # a send larger than the bound neither grows nor replaces the kept buffers
    big = [bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP() / bytes(1400))] * \
        (SCRATCH_KEEP_MAX // 1400 + 10)
    result = stack.send(big, sa)
    assert len(result.status) == len(big) and not result.status.any()
    assert scratch["packets"] is kept and scratch["size"] <= SCRATCH_KEEP_MAX


def test_bytes_likes_and_scapy_packets():
    stack, sa = stack_and_sa()
    twin_stack, twin_sa = stack_and_sa()
    batch = packets(4, 40)
    mixed = [bytearray(p) if k % 3 == 0 else memoryview(p) if k % 3 == 1 else IP(p)
             for k, p in enumerate(batch)]
    assert frames_of(stack.send(mixed, sa)) == frames_of(twin_stack.send(batch, twin_sa))


def test_host_pack_refuses_rows_that_do_not_fit():
    fp = kernels()
    chunks = [b"abc", b"", b"defgh"]
    pkts = np.zeros(3, HOST_PKT_DTYPE)
    pkts["cap_len"] = [3, 0, 5]
    pkts["off"] = [0, 3, 3]
    out = np.zeros(8, np.uint8)
    fp.host_pack(chunks, out, pkts.view(np.uint8))
    assert out.tobytes() == b"abcdefgh"
    pkts["off"][2] = 4  # past the end
    with pytest.raises(ValueError, match="outside"):
        fp.host_pack(chunks, out, pkts.view(np.uint8))
    pkts["off"][2], pkts["cap_len"][2] = 3, 4  # a row shorter than its packet
    with pytest.raises(ValueError, match="length"):
        fp.host_pack(chunks, out, pkts.view(np.uint8))
    with pytest.raises(ValueError, match="not bytes"):
        fp.host_pack([b"abc", bytearray(), b"defgh"], out, pkts.view(np.uint8))
    with pytest.raises(ValueError):
        fp.host_pack(chunks[:2], out, pkts.view(np.uint8)[:10])  # rows cut short


def test_from_frames_fast_path_equals_the_builder():
    """PacketBatch.from_frames over bytes (one bytearray join, only the given OOB fields set)
    against its builder path (the same frames as bytearrays), field by field."""
    from ipsecoffload.datapath.batch import NBL_FIELDS, PacketBatch
    frames = packets(11, 30)
    kwargs = {"offload_handle": 7, "next_header": [k % 256 for k in range(30)], "l2_len": 0}
    for given in ({}, kwargs, {"pad_length": None, "tunnel_handle": 3}):
        fast = PacketBatch.from_frames(frames, **given)
        slow = PacketBatch.from_frames([bytearray(f) for f in frames], **given)
        assert fast.arena.flags.writeable and fast.arena.tobytes() == b"".join(frames)
        assert np.array_equal(fast.nb_off, slow.nb_off) and np.array_equal(fast.nb_len,
                                                                           slow.nb_len)
        for name in NBL_FIELDS:
            assert np.array_equal(getattr(fast, name), getattr(slow, name)), name
        assert fast.oob_bytes.tobytes() == slow.oob_bytes.tobytes()


def test_receive_takes_bytes_likes():
    stack, sa = stack_and_sa()
    wire = [bytes(f) for f in stack.send(packets(12, 20), sa).wire.frames()]
    rx = HostStack(Miniport())
    rx.add_inbound_sa(sa.config, replay_window=0)
    want = rx.receive(wire).packets()
    mixed = [bytearray(f) if k % 2 else memoryview(f) for k, f in enumerate(wire)]
    assert rx.receive(mixed).packets() == want
    assert [p[14:] for p in want] == packets(12, 20)  # Ethernet in front (the stack's link)


def test_host_pack_rows():
    fp = kernels()
    chunks = [b"abc", b"", b"defgh"]
    pkts = np.zeros(3, HOST_PKT_DTYPE)
    assert fp.host_pack_rows(chunks, pkts.view(np.uint8)) == 8
    assert pkts["off"].tolist() == [0, 3, 3] and pkts["cap_len"].tolist() == [3, 0, 5]
    assert fp.host_pack_rows([b"abc", bytearray(b"x")], np.zeros(2, HOST_PKT_DTYPE).view(
        np.uint8)) == -1  # not bytes: the caller's general path
    assert fp.host_pack_rows([], np.zeros(0, HOST_PKT_DTYPE).view(np.uint8)) == 0
    with pytest.raises(ValueError):
        fp.host_pack_rows(chunks, np.zeros(2, HOST_PKT_DTYPE).view(np.uint8))  # too few rows


def test_sa_rows_are_made_once_and_placed_per_table():
    stack = HostStack(Miniport())
    tunnel = stack.add_sa(SaConfig(spi=0x77, encryption="aes-gcm-128", key=bytes(20),
                                   mode="tunnel", tunnel_src="192.0.2.1",
                                   tunnel_dst="192.0.2.2"))
    inner = stack.add_sa(SaConfig(spi=0x78, encryption="aes-gcm-128", key=bytes(20)),
                         via=tunnel)
    first = tx_frame.sa_table([inner, tunnel])
    assert first["via"].tolist() == [1, -1]
    kept = inner._host_sa_row
    assert not kept.flags.writeable
    second = tx_frame.sa_table([tunnel, inner])  # the same rows, another order
    assert second["via"].tolist() == [-1, 0]
    assert inner._host_sa_row is kept
    for table, order in ((first, [inner, tunnel]), (second, [tunnel, inner])):
        for k, sa in enumerate(order):
            want = tx_frame._sa_row(sa)
            for name in tx_frame.HOST_SA_DTYPE.names:
                if name != "via":
                    assert np.array_equal(table[name][k], want[name]), name
    assert second["tun_dst"][0][:4].tolist() == [192, 0, 2, 2] and second["tunnel"][0] == 1


# -- output arenas offered back (datapath/arenas.py) --------------------------------------------
def test_arena_recycler_offers_only_what_nothing_holds():
    from ipsecoffload.datapath.arenas import KEEP_MAX, KEEP_MIN, ArenaRecycler
    rec = ArenaRecycler()
    assert rec.offer() is None
    arena = np.empty(KEEP_MIN, np.uint8)
    rec.keep(arena[:100])  # a view: its array is kept
    assert rec.offer() is None  # the name ``arena`` still holds it
    view = arena[10:]
    del arena
    assert rec.offer() is None  # the view holds it
    exported = memoryview(view)
    del view
    assert rec.offer() is None  # an export holds it
    del exported
    got = rec.offer()
    assert got is not None and got.nbytes == KEEP_MIN
    del got
    rec.keep(np.empty(KEEP_MIN - 1, np.uint8))  # too small to keep: the kept one stays
    rec.keep(np.empty(KEEP_MAX + 1, np.uint8))  # too large to keep
    got = rec.offer()  # (one offer per name: pytest's assert keeps its operands alive)
    assert got is not None and got.nbytes == KEEP_MIN


def test_send_results_held_or_dropped_across_recycled_arenas():
    stack, sa = stack_and_sa()
    twin_stack, twin_sa = stack_and_sa()
    twin_stack.compiled_framing = False
    held, copies, reused = [], [], 0
    for k in range(12):
        batch = packets(20 + k, 80, 1500)
        result = stack.send(batch, sa)
        frames = frames_of(result)
        assert frames == frames_of(twin_stack.send(batch, twin_sa))
        reused += result.wire.arena.base is not None \
            and result.wire.arena.base is stack.miniport._tx_arenas._arena and k > 0
        if k % 3 == 0:  # every third result held to the end, the others dropped
            held.append(result)
            copies.append(frames)
        del result
    assert reused  # the dropped results' arenas were written again
    assert [frames_of(r) for r in held] == copies


def test_received_held_or_dropped_across_recycled_arenas():
    stack, sa = stack_and_sa()
    rx = HostStack(Miniport())
    rx.add_inbound_sa(sa.config, replay_window=0)
    held, want = [], []
    for k in range(10):
        batch = packets(40 + k, 90, 1500)
        wire = [bytes(f) for f in stack.send(batch, sa).wire.frames()]
        got = rx.receive(wire)
        assert [p[14:] for p in got.packets()] == batch
        if k % 2:
            held.append((got, b"".join(wire)))
            want.append(batch)
        del got
    assert rx._rx_frames._arena is not None and rx._rx_delivered._arena is not None
    for (got, joined), batch in zip(held, want):
        assert [p[14:] for p in got.packets()] == batch
        assert len(got.nic.frames()) == len(batch)
        assert got.nic.batch.arena.tobytes() == joined  # the frames as received, intact
