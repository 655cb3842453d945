//! netif
