"""PKRU, the protection-key rights register of the CPU (Intel SDM vol. 3A §4.6.2).

Two bits per key: AD (access disable, bit 2i) and WD (write disable, bit 2i + 1). With
CR4.PKE set, a data access to a user-mode address whose leaf entry holds key i is refused
when AD_i is set, a write also when WD_i is set (CR0.WP is set, as Linux runs); instruction
fetches are never checked. Names and values follow arch/x86/include/asm/pkru.h and
arch/x86/mm/pkeys.c (init_pkru_value).
"""

from __future__ import annotations

PKRU_AD_BIT = 0x1
PKRU_WD_BIT = 0x2
PKRU_BITS_PER_PKEY = 2
NR_PKEYS = 16


def pkru_ad_mask(pkey: int) -> int:
    """PKRU_AD_MASK(pkey)."""
    return PKRU_AD_BIT << (pkey * PKRU_BITS_PER_PKEY)


# init_pkru_value: what execve() loads (pkru_write_default): every key but 0 access-disabled.
INIT_PKRU_VALUE = sum(pkru_ad_mask(pkey) for pkey in range(1, NR_PKEYS))   # 0x55555554


def pkru_allows_read(pkru: int, pkey: int) -> bool:
    """__pkru_allows_read(): AD of ``pkey`` is clear."""
    return not pkru & (PKRU_AD_BIT << (pkey * PKRU_BITS_PER_PKEY))


def pkru_allows_write(pkru: int, pkey: int) -> bool:
    """__pkru_allows_write(): neither AD nor WD of ``pkey`` is set."""
    return not pkru & ((PKRU_AD_BIT | PKRU_WD_BIT) << (pkey * PKRU_BITS_PER_PKEY))


def pkru_allows_pkey(pkru: int, pkey: int, write: bool) -> bool:
    """__pkru_allows_pkey(): the data access (a write if ``write``) is allowed under ``pkru``."""
    return pkru_allows_write(pkru, pkey) if write else pkru_allows_read(pkru, pkey)


def set_pkey_rights(pkru: int, pkey: int, disable_access: bool, disable_write: bool) -> int:
    """arch_set_user_pkey_access(): ``pkru`` with the two bits of ``pkey`` replaced."""
    shift = pkey * PKRU_BITS_PER_PKEY
    bits = (PKRU_AD_BIT if disable_access else 0) | (PKRU_WD_BIT if disable_write else 0)
    return (pkru & ~((PKRU_AD_BIT | PKRU_WD_BIT) << shift) & 0xFFFFFFFF) | (bits << shift)
