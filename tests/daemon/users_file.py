"""The users mapping and CSV files the daemon tests drop."""

from __future__ import annotations

USERS = """
    staging_table: u_hr_user_import
    match: ["users*"]
    batch_rows: 10
    columns:
      "Emp ID": {to: "Employee Number", required: true}
      "First": "First Name"
      "Last": "Last Name"
      "Dept": "Department"
      "Title": "Title"
"""


def users_csv(count: int, start: int = 100, title: str = "T") -> str:
    return "Emp ID,First,Last,Dept,Title\n" + "".join(
        f"{start + i:06d},F{start + i},L{start + i},Engineering,{title}{i}\n" for i in range(count)
    )
